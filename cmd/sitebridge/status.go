package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sitebridge/sitebridge/gateway"
)

func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("status", stderr)
	admin := fs.String("admin", "127.0.0.1:9100", "admin `HOST:PORT` of the instance (the demo's are 127.0.0.1:9101, 9102, 9201, 9202)")
	token := fs.String("token", "", "bearer token of the admin endpoint")
	output := fs.String("o", "text", "output: text or json")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *output != "text" && *output != "json" {
		return fmt.Errorf("%w: -o must be text or json", errUsage)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+*admin+"/api/v1/status", nil)
	if err != nil {
		return err
	}
	if *token != "" {
		req.Header.Set("Authorization", "Bearer "+*token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("status of %s: %w", *admin, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status of %s: %s: %s", *admin, resp.Status, strings.TrimSpace(string(body)))
	}
	if *output == "json" {
		_, err := stdout.Write(body)
		return err
	}
	var st gateway.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("status of %s: %w", *admin, err)
	}
	printStatus(stdout, st)
	return nil
}

func printStatus(w io.Writer, st gateway.Status) {
	fmt.Fprintf(w, "instance %s  site %s", st.Instance, st.Site)
	if st.Tenant != "" {
		fmt.Fprintf(w, "  tenant %s", st.Tenant)
	}
	fmt.Fprintf(w, "  state %s  epoch %d\n", st.State, st.Epoch)
	fmt.Fprintf(w, "services offered (targets healthy): %s\n\n", list(st.Services))

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "TUNNELS (%d)\tSITE\tSERVICES\tACTIVE\tVIA\n", len(st.Tunnels))
	for _, t := range st.Tunnels {
		via := t.URL
		if via == "" {
			via = "accepted from " + t.Addr
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", t.Peer, t.Site, list(t.Services), t.Active, via)
	}
	tw.Flush()
	if len(st.Members) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "MEMBERS (%d)\tGOSSIP\tREACHES\tTUNNEL URL\tADMIN\n", len(st.Members))
		for _, m := range st.Members {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", m.Name, m.Addr, list(m.Reach), dash(m.TunnelURL), dash(m.Admin))
		}
		tw.Flush()
	}
	if len(st.Store) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "STORE SCHEME\tBACKUPS\tTABLE\tPRIMARIES\tHELD HERE\n")
		for _, sc := range st.Store {
			state := "settled"
			if !sc.Settled {
				state = "moving"
			}
			var ps []string
			for m, n := range sc.Primaries {
				ps = append(ps, fmt.Sprintf("%s:%d", m, n))
			}
			slices.Sort(ps)
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\n", sc.Scheme, sc.Backups, state, list(ps), sc.Held)
		}
		tw.Flush()
	}
	if len(st.Federation) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "FEDERATION (this member)\tPARTICIPANT\tSTATE\tPENDING\tLAG\tLAST ERROR\n")
		for _, f := range st.Federation {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%.1fs\t%s\n", f.Scheme, f.Participant, f.State, f.Pending, f.LagSeconds, dash(f.LastError))
		}
		tw.Flush()
	}
}

func list(ss []string) string {
	if len(ss) == 0 {
		return "-"
	}
	return strings.Join(ss, ",")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
