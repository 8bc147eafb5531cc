"""Reporting room (ARCHITECTURE "What grows next"): statistics, claims and pages computed from cell
records alone — never by training code."""
