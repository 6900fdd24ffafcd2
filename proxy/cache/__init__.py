"""The transcript cache: a repeated upload answered without paying the provider again."""
