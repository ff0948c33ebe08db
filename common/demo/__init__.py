"""S0's synthetic HPA-like demo data: labels, field geometry, renderer, dataset writer."""
