package main

import (
	"net/http"
	"sort"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metricsSnapshot is what one scrape reports. The agent fills it from the
// state it already keeps, so metrics can never disagree with /v1/status.
type metricsSnapshot struct {
	Revision        string
	LastFetchUnix   float64
	SyncErrors      map[string]float64 // what → 1 while the error stands
	SyncAttempts    float64
	Placed          float64
	Unplaced        float64
	LocalSlots      float64
	PlanCount       float64
	PlanSeconds     float64 // total time spent in placement.Plan
	Reconciles      float64
	Instances       map[[2]string]float64 // (service, state) → count
	Restarts        map[string]float64    // service → restarts
	Members         map[string]float64    // status → count
	Records         float64
	DNSQueries      map[string]float64 // rcode → count
	BalancerConns   map[string]float64 // service → connections accepted
	BalancerActive  map[string]float64
	BalancerBytes   map[[2]string]float64 // (service, direction) → bytes
	BalancerRate    map[string]float64    // service → new connections/s
	BalancerFailed  map[string]float64    // service → dials that failed
	GossipEvents    float64
	AntiEntropyPull float64
	JobLastSuccess  map[string]float64    // job → Unix time of its last run that exited 0 here
	JobLastFailure  map[string]float64    // job → Unix time of its last run that did not
	JobRuns         map[[2]string]float64 // (job, outcome) → runs and skips since the agent started
}

var (
	descRevision    = prometheus.NewDesc("shoal_sync_revision_info", "The Git commit in force on this node.", []string{"commit"}, nil)
	descLastFetch   = prometheus.NewDesc("shoal_sync_last_fetch_timestamp_seconds", "When the spec remote was last reached.", nil, nil)
	descSyncError   = prometheus.NewDesc("shoal_sync_error", "1 while a sync error keeps the newest head from being used.", []string{"what"}, nil)
	descSyncAttempt = prometheus.NewDesc("shoal_sync_error_attempts", "Consecutive attempts that hit the current sync error.", nil, nil)
	descSlots       = prometheus.NewDesc("shoal_placement_slots", "Slots of the current placement.", []string{"state"}, nil)
	descLocalSlots  = prometheus.NewDesc("shoal_placement_local_slots", "Slots placed on this node.", nil, nil)
	descPlans       = prometheus.NewDesc("shoal_placement_plans_total", "Placements computed.", nil, nil)
	descPlanSecs    = prometheus.NewDesc("shoal_placement_seconds_total", "Time spent computing placements.", nil, nil)
	descReconciles  = prometheus.NewDesc("shoal_reconcile_total", "Desired states handed to the runtime.", nil, nil)
	descInstances   = prometheus.NewDesc("shoal_instances", "Local instances by state.", []string{"service", "state"}, nil)
	descRestarts    = prometheus.NewDesc("shoal_instance_restarts", "Restarts of local instances.", []string{"service"}, nil)
	descMembers     = prometheus.NewDesc("shoal_gossip_members", "Fleet members by status.", []string{"status"}, nil)
	descRecords     = prometheus.NewDesc("shoal_gossip_records", "Service records held for the whole fleet.", nil, nil)
	descEvents      = prometheus.NewDesc("shoal_gossip_events_total", "Record events received.", nil, nil)
	descPulls       = prometheus.NewDesc("shoal_gossip_antientropy_pulls_total", "Full record sets pulled from peers.", nil, nil)
	descDNS         = prometheus.NewDesc("shoal_dns_queries_total", "DNS queries answered.", []string{"rcode"}, nil)
	descLBConns     = prometheus.NewDesc("shoal_balancer_connections_total", "Connections accepted by the balancer.", []string{"service"}, nil)
	descLBActive    = prometheus.NewDesc("shoal_balancer_active_connections", "Connections open through the balancer.", []string{"service"}, nil)
	descLBBytes     = prometheus.NewDesc("shoal_balancer_bytes_total", "Bytes forwarded by the balancer.", []string{"service", "direction"}, nil)
	descLBRate      = prometheus.NewDesc("shoal_balancer_new_connections_per_second", "Recent rate of new connections, the autoscaling signal.", []string{"service"}, nil)
	descLBFailed    = prometheus.NewDesc("shoal_balancer_dial_failures_total", "Backend dials that failed and were retried elsewhere.", []string{"service"}, nil)
	descJobSuccess  = prometheus.NewDesc("shoal_job_last_success_timestamp_seconds", "When a run of the job on this node last ended with exit code 0.", []string{"job"}, nil)
	descJobFailure  = prometheus.NewDesc("shoal_job_last_failure_timestamp_seconds", "When a run of the job on this node last ended otherwise.", []string{"job"}, nil)
	descJobRuns     = prometheus.NewDesc("shoal_job_runs_total", "Job runs ended and ticks skipped on this node, by outcome.", []string{"job", "outcome"}, nil)
)

// snapshotCollector exports a metricsSnapshot taken at scrape time.
type snapshotCollector struct{ snap func() metricsSnapshot }

func (c snapshotCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRevision, descLastFetch, descSyncError, descSyncAttempt, descSlots, descLocalSlots,
		descPlans, descPlanSecs, descReconciles, descInstances, descRestarts, descMembers, descRecords, descEvents, descPulls,
		descDNS, descLBConns, descLBActive, descLBBytes, descLBRate, descLBFailed, descJobSuccess, descJobFailure, descJobRuns} {
		ch <- d
	}
}

func (c snapshotCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.snap()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	if s.Revision != "" {
		gauge(descRevision, 1, s.Revision)
	}
	gauge(descLastFetch, s.LastFetchUnix)
	for _, what := range sortedKeys(s.SyncErrors) {
		gauge(descSyncError, s.SyncErrors[what], what)
	}
	gauge(descSyncAttempt, s.SyncAttempts)
	gauge(descSlots, s.Placed, "placed")
	gauge(descSlots, s.Unplaced, "unplaced")
	gauge(descLocalSlots, s.LocalSlots)
	counter(descPlans, s.PlanCount)
	counter(descPlanSecs, s.PlanSeconds)
	counter(descReconciles, s.Reconciles)
	for k, v := range s.Instances {
		gauge(descInstances, v, k[0], k[1])
	}
	for _, svc := range sortedKeys(s.Restarts) {
		gauge(descRestarts, s.Restarts[svc], svc)
	}
	for _, st := range sortedKeys(s.Members) {
		gauge(descMembers, s.Members[st], st)
	}
	gauge(descRecords, s.Records)
	counter(descEvents, s.GossipEvents)
	counter(descPulls, s.AntiEntropyPull)
	for _, rc := range sortedKeys(s.DNSQueries) {
		counter(descDNS, s.DNSQueries[rc], rc)
	}
	for _, svc := range sortedKeys(s.BalancerConns) {
		counter(descLBConns, s.BalancerConns[svc], svc)
		gauge(descLBActive, s.BalancerActive[svc], svc)
		gauge(descLBRate, s.BalancerRate[svc], svc)
		counter(descLBFailed, s.BalancerFailed[svc], svc)
	}
	for k, v := range s.BalancerBytes {
		counter(descLBBytes, v, k[0], k[1])
	}
	for _, j := range sortedKeys(s.JobLastSuccess) {
		gauge(descJobSuccess, s.JobLastSuccess[j], j)
	}
	for _, j := range sortedKeys(s.JobLastFailure) {
		gauge(descJobFailure, s.JobLastFailure[j], j)
	}
	for k, v := range s.JobRuns {
		counter(descJobRuns, v, k[0], k[1])
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// metricsHandler serves the agent's metrics and the Go runtime's.
func metricsHandler(snap func() metricsSnapshot) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(snapshotCollector{snap: snap}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}
