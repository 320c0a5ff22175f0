"""appserver"""
