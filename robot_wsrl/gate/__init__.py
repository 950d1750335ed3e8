"""Sim-first validation of every new policy, and the registry of validated versions."""
