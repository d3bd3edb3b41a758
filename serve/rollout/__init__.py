"""Which version answers: router, canary controller and gate, outcome stats, shadow traffic, the store, a version's lifecycle."""
