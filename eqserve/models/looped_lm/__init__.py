"""looped-lm: a recurrent-depth transformer in Huginn's layout, trained on prefix parity of bit strings."""
