// Command vcsim: a small main over govmomi's simulator package, for Lifeboat's vSphere tests and bench.
//
// Debian's golang-github-vmware-govmomi-dev ships the simulator library but not govmomi's own vcsim main, so the
// project carries this one. It builds offline with tests/vcsim/build.sh.
//
// The model comes from flags; it listens on -l (127.0.0.1:0 picks a free port), prints one line
// "VCSIM_URL=https://HOST:PORT/sdk" once it is listening (a test fixture waits for that line), and exits when its
// stdin is closed, so a test that dies never leaves a simulator behind.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"log"
	"net/url"
	"os"

	"github.com/vmware/govmomi/simulator"
)

func main() {
	listen := flag.String("l", "127.0.0.1:0", "listen address (port 0 picks a free port)")
	esx := flag.Bool("esx", false, "simulate a standalone ESXi host instead of a vCenter")
	dc := flag.Int("dc", 1, "datacenters")
	cluster := flag.Int("cluster", 1, "clusters per datacenter")
	host := flag.Int("host", 3, "hosts per cluster")
	standalone := flag.Int("standalone-host", 1, "standalone hosts per datacenter")
	vm := flag.Int("vm", 2, "virtual machines per resource pool")
	ds := flag.Int("ds", 1, "datastores")
	pg := flag.Int("pg", 1, "distributed portgroups per datacenter")
	pool := flag.Int("pool", 0, "child resource pools per cluster")
	folder := flag.Int("folder", 0, "datacenters placed in folders")
	autostart := flag.Bool("autostart", true, "power on the model's VMs")
	cert := flag.String("tlscert", "", "PEM certificate (default: the simulator's built-in localhost certificate)")
	key := flag.String("tlskey", "", "PEM private key of -tlscert")
	plain := flag.Bool("http", false, "serve plain HTTP (no TLS)")
	user := flag.String("username", "user", "the only user name that logs in")
	pass := flag.String("password", "pass", "its password (anything else is InvalidLogin)")
	idle := flag.Duration("session-timeout", 0, "expire sessions idle this long (0: never)")
	verbose := flag.Bool("v", false, "log every simulator action to stderr")
	flag.Parse()

	if !*verbose {
		// The simulator logs each property-collector step; a parent that does not drain stderr would block it.
		log.SetOutput(ioutil.Discard)
	}
	simulator.SessionIdleTimeout = *idle

	model := simulator.VPX()
	if *esx {
		model = simulator.ESX()
	} else {
		model.Datacenter = *dc
		model.Cluster = *cluster
		model.ClusterHost = *host
		model.Host = *standalone
		model.Portgroup = *pg
		model.Pool = *pool
		model.Folder = *folder
	}
	model.Machine = *vm
	model.Datastore = *ds
	model.Autostart = *autostart

	if err := model.Create(); err != nil {
		fmt.Fprintf(os.Stderr, "vcsim: model: %v\n", err)
		os.Exit(1)
	}

	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*user, *pass)}
	if !*plain {
		cfg := &tls.Config{}
		if *cert != "" {
			pair, err := tls.LoadX509KeyPair(*cert, *key)
			if err != nil {
				fmt.Fprintf(os.Stderr, "vcsim: tls: %v\n", err)
				os.Exit(1)
			}
			cfg.Certificates = []tls.Certificate{pair}
		}
		model.Service.TLS = cfg
	}
	server := model.Service.NewServer()

	u := *server.URL
	u.User = nil // the password is the caller's to know; never echo it
	// Report the address actually bound (NewServer rewrites an unspecified IP to a NIC address).
	u.Host = server.Listener.Addr().String()
	fmt.Printf("VCSIM_URL=%s\n", u.String())
	os.Stdout.Sync()

	// Exit when the parent closes our stdin (or dies): no orphaned simulators. Exit at once rather than through
	// server.Close(), which would wait for long-polling WaitForUpdatesEx calls to time out.
	_, _ = io.Copy(ioutil.Discard, os.Stdin)
	model.Remove()
	os.Exit(0)
}
