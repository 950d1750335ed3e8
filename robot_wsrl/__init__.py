"""robot-wsrl: warm-start online RL fine-tuning for robots, without keeping the offline data.

Importing the package imports nothing heavy: the robot side must stay free of torch.
"""

__version__ = "0.1.0"
