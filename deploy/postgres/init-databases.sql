-- Run once, by the postgres image, when its volume is new (docker-entrypoint-initdb.d).
-- One server, two databases: the Prefect server's and this service's mapping store (and inbox).
-- Each program migrates its own schema when it starts.
CREATE DATABASE prefect;
CREATE DATABASE pf_jira_sync;
