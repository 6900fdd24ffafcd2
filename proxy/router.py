"""Which providers serve a request, in what order, and how often each is tried."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import (
    InvalidRequestError,
    NotFoundError,
    ServiceUnavailableError,
)
from .providers.azure import AzureProvider, check_deployment_id
from .providers.base import Provider

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """A provider and the model name it is sent."""

    provider: Provider
    #: The model as the upstream knows it (no ``provider/`` prefix).
    model: str
    #: The model as the client wrote it.
    requested: str
    #: An Azure deployment a path named: served as the deployment itself when no
    #: key's ``deployments`` map names it (README, "API"), never on /v1.
    named_deployment: bool = False


#: Model strings whose routes are remembered: more than any deployment serves,
#: and a bound against clients that send endless new ones.
REMEMBERED_ROUTES = 1024


class Router:
    """Resolves ``model`` fields to routes (README, "API")."""

    def __init__(self, providers: Mapping[str, Provider]) -> None:
        self._providers = dict(providers)
        # The providers and their keys are fixed once the app starts, so a
        # model string always resolves the same way: worked out once, it is
        # looked up after. Refusals are not kept; they are worked out again.
        self._resolved: dict[str, Route] = {}

    @property
    def providers(self) -> Mapping[str, Provider]:
        """The configured providers by name."""
        return self._providers

    def resolve(self, requested: str) -> Route:
        """The route for a model string (see :meth:`work_out`), remembered."""
        route = self._resolved.get(requested)
        if route is None:
            route = self.work_out(requested)
            if len(self._resolved) < REMEMBERED_ROUTES:
                self._resolved[requested] = route
        return route

    def work_out(self, requested: str) -> Route:
        """The route for a model string: ``provider/model`` or a bare model name.

        A bare name goes to the provider whose keys list it, else ``openai``
        when configured, else the only provider. A name such as
        ``Systran/faster-whisper-small`` whose prefix is no provider is a bare
        name too. A route to an Azure provider must name a valid deployment.
        """
        return _with_valid_deployment(self._find(requested), param="model")

    def _find(self, requested: str) -> Route:
        if not self._providers:
            raise ServiceUnavailableError("no provider is configured", code="no_provider")
        prefix, _, rest = requested.partition("/")
        listing = [p for p in self._providers.values() if p.lists(requested)]
        if rest and prefix in self._providers and not listing:
            return Route(self._providers[prefix], rest, requested)
        if len(listing) == 1:
            return Route(listing[0], requested, requested)
        if len(listing) > 1:
            names = ", ".join(sorted(p.name for p in listing))
            raise InvalidRequestError(
                f"model {requested} is offered by several providers ({names}); "
                f"name one as provider/{requested}",
                code="ambiguous_model",
                param="model",
            )
        if "openai" in self._providers:
            return Route(self._providers["openai"], requested, requested)
        if len(self._providers) == 1:
            (only,) = self._providers.values()
            return Route(only, requested, requested)
        candidates = ", ".join(
            sorted(p.name for p in self._providers.values() if p.serves(requested))
        )
        raise InvalidRequestError(
            f"model {requested} does not name a provider; "
            f"write it as provider/{requested} with one of: {candidates or 'none'}",
            code="model_not_found",
            param="model",
        )

    def azure_deployment(self, deployment: str) -> Route:
        """The route of an Azure deployment route's path: always the Azure provider (as
        Bifrost's Azure pre-hook makes it ``azure/<deployment>``), never the bare-name rule.

        The provider named ``azure`` (or the only Azure provider) maps the id
        through its keys' ``deployments`` when they name it as a model, and
        otherwise takes it as the deployment itself.
        """
        provider = self._providers.get("azure")
        if provider is None:
            azure = [p for p in self._providers.values() if isinstance(p, AzureProvider)]
            provider = azure[0] if len(azure) == 1 else None
        if provider is None:
            raise NotFoundError(
                "the Azure deployment route needs the azure provider: none is configured, "
                "or several are and none is named azure "
                f"(deployment {deployment!r}); send it to /v1 with a model instead",
                code="azure_not_configured",
            )
        # The id itself, mapped or not: it is what the client put in a path.
        check_deployment_id(deployment, param="deployment_id")
        route = Route(provider, deployment, deployment, named_deployment=True)
        return _with_valid_deployment(route, param="deployment_id")

    def plan(
        self, requested: str, fallbacks: Sequence[str], *, azure_deployment: bool = False
    ) -> list[Route]:
        """The primary route, then one per fallback, in the order given. With
        ``azure_deployment``, ``requested`` is the deployment an Azure path names."""
        routes = [self.azure_deployment(requested) if azure_deployment else self.resolve(requested)]
        for fallback in fallbacks:
            try:
                routes.append(self.resolve(fallback))
            except InvalidRequestError as exc:
                raise InvalidRequestError(
                    f"fallback {fallback}: {exc.message}", code=exc.code, param="fallbacks"
                ) from None
        return routes


def _with_valid_deployment(route: Route, *, param: str) -> Route:
    """``route``, refused (naming ``param``) when it is to an Azure provider and what
    would go into the upstream's path is no valid deployment id (README, "Security")."""
    if isinstance(route.provider, AzureProvider):
        check_deployment_id(route.provider.deployment_of(route.model), param=param)
    return route
