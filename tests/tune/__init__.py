"""Tests of dlforge.tune."""
