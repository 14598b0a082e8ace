"""Routing and resilience: which upstream serves a request, retries, fallbacks, breakers."""
