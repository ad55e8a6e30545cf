#!/usr/bin/env bash
# Installed by ddslug as .profile.d/datadog.sh; Heroku sources it at dyno start.
