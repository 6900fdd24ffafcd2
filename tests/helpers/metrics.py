"""The proxy's metrics as a test reads them: ``GET /metrics``, parsed by prometheus_client."""

from __future__ import annotations

import aiohttp
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.client import base_url

#: The audio seconds metered, by ``source`` (the answer, the container, the reservation).
METERED_AUDIO_SECONDS = "proxy_metered_audio_seconds_total"

#: Each sample's value by its name and its labels (sorted).
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(server: TestServer) -> Samples:
    """Every sample ``/metrics`` shows now."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base_url(server)}/metrics") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly ``labels`` (0 when it has not been seen yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """The samples ``name``, by the value of their ``label`` (those seen so far)."""
    return {
        dict(labels)[label]: found
        for (sample, labels), found in samples.items()
        if sample == name and label in dict(labels)
    }
