"""The admin API: prewarm jobs, image status, evict, pin, verify, run-time images."""
