"""Plan: read a suite and its manifests, and expand them into a job graph with content ids (no Ray, no models)."""
