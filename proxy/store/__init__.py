"""The store: what the gateway remembers (the request log, usage), in SQLite or PostgreSQL.

:mod:`.urls` reads the URL users write, :mod:`.engine` opens the store and
:mod:`.migrations` brings its schema up to date, :mod:`.tables` is that schema,
:mod:`.request_log` writes the log off the request path, :mod:`.log_filters`
parses a query's filters and :mod:`.log_queries` answers them.
"""
