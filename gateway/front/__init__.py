"""Front-proxy configs (nginx, Caddy) that send only what the gateway needs through it."""
