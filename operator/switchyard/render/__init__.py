"""Pure rendering: a gateway's plan in, the Kubernetes objects and configs that carry it out."""
