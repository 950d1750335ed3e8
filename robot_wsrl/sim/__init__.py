"""Simulated robots: MuJoCo drivers, dynamics-shift presets, the emulated robot."""
