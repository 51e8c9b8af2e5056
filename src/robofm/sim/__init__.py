"""Built-in simulated benchmark: language-conditioned tabletop manipulation in MuJoCo."""
