"""Serving policies around the DP: lanes and cost, tenant limits and fairness, overload states."""
