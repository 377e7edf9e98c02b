"""`emailq loadtest`: open-loop load, measured at the SMTP sink, judged against SLOs.

scenarios (what to offer) → generator (when: open-loop arrivals) → the service under test
(embedded: broker + worker processes + sink processes; or a running API over HTTP) →
measure (what arrived, when, per lane) → slo (verdicts) → report (HTML + JSON); live.py
draws the terminal view and run.py puts them together.
"""
