"""looped-lm: a recurrent-depth transformer in Huginn's layout, trained on the product of words in S3."""
