"""Teaching aids: ``explain`` (each layer's equations with live shapes and costs), the bug museum
(known-wrong backward passes that the gradient check catches), exercise scaffolds with an autograder."""
