"""The fault suite (`make chaos`): see driver.py."""
