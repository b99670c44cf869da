// Package deploy holds no code: its tests check the deployment files beside
// it (the Grafana dashboard, the Helm chart, docker-compose) mechanically,
// since no Kubernetes cluster, Grafana or Docker engine runs in the tests.
package deploy
