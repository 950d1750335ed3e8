"""The off-board learner: networks, WSRL/CQL agent, replay, training, export, the learner service."""
