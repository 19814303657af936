"""Test PACS and sample data. Product code: ``trolleyfs demo`` and the test suite both use it."""
