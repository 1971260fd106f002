"""bounces."""
