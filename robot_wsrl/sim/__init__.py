"""Simulated robots: MuJoCo drivers, dynamics-shift presets, the emulated robot.

Importing any of them first settles MuJoCo's OpenGL backend (`gl.settle`), before mujoco is imported."""

from robot_wsrl.sim import gl

gl.settle()
