"""One thin module per `robot-wsrl` command, and the dispatcher."""
