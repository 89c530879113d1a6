"""The routing study: labelled datasets, answer collection, the routing table and its plot."""
