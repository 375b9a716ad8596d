"""Tests of mortgagellm.serve."""
