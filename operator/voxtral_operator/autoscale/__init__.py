"""Autoscaling on vLLM's queue depth: gather (scrape) -> decide (pure policy) -> act (scale subresource)."""
