"""shoal.apps"""
