"""Tests of one package area (a package so test module names stay unique)."""
