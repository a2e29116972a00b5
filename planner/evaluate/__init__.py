"""Quality evaluation: held-out perplexity and agreement with the dense teacher."""
