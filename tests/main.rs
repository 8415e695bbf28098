//! Integration tests: every module here runs against a real etcd + kube-apiserver (`TestEnv`).
