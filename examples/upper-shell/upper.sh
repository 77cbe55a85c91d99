#!/bin/sh
# Upper-cases its input: stdin is the payload, stdout the response.
tr '[:lower:]' '[:upper:]'
