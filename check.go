package shoal

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	_ "time/tzdata" // CRON_TZ= zones must resolve on machines without zoneinfo

	"cuelang.org/go/cue"
	"github.com/robfig/cron/v3"
)

// cronParser accepts five fields, an optional leading seconds field,
// descriptors (@daily, @every 5m) and a CRON_TZ= prefix.
var cronParser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// ParseSchedule parses a job schedule the way validation does.
func ParseSchedule(s string) (cron.Schedule, error) {
	sched, err := cronParser.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("invalid cron schedule %q: %w", s, err)
	}
	return sched, nil
}

// decodeStrict turns a validated CUE value into a Go value. Going through
// JSON uses the types' own decoders (Bytes, Duration) and rejects any field
// the Go types do not know, which catches schema and types drifting apart.
func decodeStrict(v cue.Value, out any) error {
	b, err := v.MarshalJSON()
	if err != nil {
		return fmt.Errorf("encode: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(out); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	return nil
}

// Bounds on a replica's memory: below MinMemory a container cannot start,
// and no size may stand for "unlimited".
const (
	MinMemory Bytes = 4 << 20
	MaxMemory Bytes = 1 << 40
)

// ReservedPorts are the agent's own default ports, which every node
// listens on: no service may claim them as its balancer port.
var ReservedPorts = map[int]string{
	53:   "container DNS",
	7900: "the agent API",
	7946: "gossip",
	8600: "the agent's DNS server",
}

// Bounds over a whole spec tree, so that placement (whose cost grows with
// services × replicas × nodes) stays small.
const (
	MaxDeclarations  = 1000
	MaxTotalReplicas = 10000
)

// checkResources holds the bounds on sizes that CUE cannot compare.
func checkResources(r Resources) []FieldError {
	var errs []FieldError
	switch {
	case r.Memory < MinMemory:
		errs = append(errs, FieldError{Path: "resources.memory", Message: fmt.Sprintf("memory %s is below the minimum %s", r.Memory, MinMemory)})
	case r.Memory > MaxMemory:
		errs = append(errs, FieldError{Path: "resources.memory", Message: fmt.Sprintf("memory %s is above the maximum %s", r.Memory, MaxMemory)})
	}
	return errs
}

// checkService holds the rules that span fields, which CUE expresses poorly.
func checkService(s *Service) []FieldError {
	errs := checkResources(s.Resources)
	add := func(p, format string, args ...any) {
		errs = append(errs, FieldError{Path: p, Message: fmt.Sprintf(format, args...)})
	}
	names := map[string]bool{}
	numbers := map[int]bool{}
	for i, p := range s.Ports {
		if what, ok := ReservedPorts[p.Port]; ok {
			add(fmt.Sprintf("ports[%d].port", i), "port %d is reserved for %s", p.Port, what)
		}
		if names[p.Name] {
			add(fmt.Sprintf("ports[%d].name", i), "duplicate port name %q: give each port its own name", p.Name)
		}
		if numbers[p.Port] {
			add(fmt.Sprintf("ports[%d].port", i), "duplicate port %d", p.Port)
		}
		names[p.Name], numbers[p.Port] = true, true
	}
	if h := s.Health; h != nil {
		kinds := 0
		if h.HTTP != "" {
			kinds++
		}
		if h.TCP {
			kinds++
		}
		if len(h.Exec) > 0 {
			kinds++
		}
		switch {
		case kinds == 0:
			add("health", "set one of http, tcp or exec")
		case kinds > 1:
			add("health", "set only one of http, tcp or exec")
		}
		if (h.HTTP != "" || h.TCP) && len(s.Ports) == 0 {
			add("health", "an http or tcp check needs a port: declare one under ports")
		}
		if h.Port != "" && !names[h.Port] {
			add("health.port", "no port named %q in ports", h.Port)
		}
		if h.Timeout > h.Interval {
			add("health.timeout", "timeout %s is longer than interval %s", h.Timeout, h.Interval)
		}
	}
	if s.Restart.Backoff > s.Restart.MaxBackoff {
		add("restart.backoff", "backoff %s is longer than max_backoff %s", s.Restart.Backoff, s.Restart.MaxBackoff)
	}
	if s.Update.MaxSurge == 0 && s.Update.MaxUnavailable == 0 {
		add("update", "max_surge and max_unavailable cannot both be 0: the update could never make progress")
	}
	if sc := s.Scale; sc != nil && sc.Min > sc.Max {
		add("scale.min", "min %d is greater than max %d", sc.Min, sc.Max)
	}
	return errs
}

func checkJob(j *Job) []FieldError {
	errs := checkResources(j.Resources)
	if _, err := cronParser.Parse(j.Schedule); err != nil {
		msg := err.Error()
		if strings.HasPrefix(msg, "provided bad location") {
			msg = "unknown time zone in " + msg
		}
		errs = append(errs, FieldError{Path: "schedule", Message: fmt.Sprintf("invalid cron schedule %q: %s", j.Schedule, msg)})
	}
	return errs
}
