// Package syncctl is the HTTP rendezvous of the synchronised modes: a server
// (waitStart, waitStartAndStop) that starts and stops the command on
// POST /start and POST /stop, and a client (syncStart, syncStartAndStop)
// that sends those requests.
//
// API CONTRACT (used by internal/modes; keep the exported names stable).
//
// # Server protocol
//
// Every response body is one line of plain text saying what happened
// (except 204, which has no body, and GET /status, which is JSON).
//
//	request        waiting            running                 finished        failed
//	POST /start    201 started (*)    409 already started     409 (**)        500 start failed: <err>
//	POST /stop     412 not started    202 stopping (***)      204 (no body)   412 not started
//	               (second /stop while running: 409 already stopping)
//	GET  /status   200 JSON, see [Status]
//
//	(*)   or 500 "start failed: <err>" if the Start callback fails; the state
//	      becomes "failed" and Start is never called again. Or 503 "not
//	      starting: the run is ending" once Refuse was called or the
//	      callback returned ErrEnding (a signal came before /start). A
//	      201 carries the header Statexec-Sync-Delay-Ns: the nanoseconds
//	      from accepting /start (the sync instant) to the answer.
//	(**)  "already started (command finished)" - the command ran already.
//	(***) 202 Accepted: Stop has been called (the signal is sent) but the
//	      command may still be ending.
//
// Other rules, checked in this order:
//   - unknown paths: 404.
//   - POST /stop on a waitStart server (AllowStop false): 404 "stop not
//     enabled" - the endpoint does not exist there, which is clearer than a
//     405 whose Allow header would have to be empty.
//   - other methods: 405 with an Allow header ("POST", or "GET, HEAD" for
//     /status).
//   - request bodies are ignored; more than 1 KiB of body gets 413 and
//     nothing happens.
//   - with a Token: no or a wrong "Authorization: Bearer <token>" gets 401
//     and nothing happens (GET /status included).
//
// # N parties (ServerOptions.Parties > 1, parties.go)
//
// The table above is for one party. With N parties:
//   - POST /start waiting: the party is counted (GET /status "parties")
//     and, unless it is the N-th, gets at once an interim 102 Processing
//     with Statexec-Sync-Parties: "arrived/N", then the final answer when
//     the barrier is decided (a long poll). A party that disconnects
//     before that no longer counts.
//   - when the N-th arrives: Start (StartAt) is called once with a start
//     instant ahead by the largest round trip of the parties (TCP_INFO of
//     their connections) plus 50 ms, then every party gets 201 with
//     Statexec-Sync-Start-In-Ns (the time left until that instant when
//     the answer was written), Statexec-Sync-Rtt-Ns (its round trip) and
//     Statexec-Sync-Stop ("first" or "last"). The 201s come before the
//     server's own command starts, at the instant.
//   - not all N within PartyTimeout of the first arrival: every waiting
//     party gets 503 "not starting: only K of N parties arrived within
//     T (SE_SYNC_TIMEOUT), nothing started"; the state becomes "failed",
//     Abandoned is closed, Start is never called; a later /start gets
//     the same 503.
//   - a /start once N have arrived or after the start: 409 "already
//     started" (a late party).
//   - Refuse, or Shutdown, while parties wait: they get 503.
//   - POST /stop, policy first: the first stops (202 "stopping"), the
//     later ones get 202 "already stopping" (not 409: every party posts
//     its /stop); policy last: 202 "stop noted: K of N parties have
//     stopped (policy last)" until the last, whose /stop stops; a /stop
//     beyond the parties gets 409 "already stopping". 204 once finished.
package syncctl
