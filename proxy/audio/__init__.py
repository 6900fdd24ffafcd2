"""Audio: the upload in its several forms (live, spooled, in memory), and the spool."""
