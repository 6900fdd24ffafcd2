"""Who is calling and what they may do: credentials, virtual keys, limits, budgets."""
