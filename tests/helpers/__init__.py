"""What tests share: fake upstreams, clients, forms, processes, synthetic speech."""
