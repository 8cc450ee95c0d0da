"""
chatd-bench: a load generator for chatd and the other servers of its family.

It creates R rooms x M members over the real TCP protocol in the model dialect
(C{chatd.bench.setup_rooms}), then has the members send chat datagrams for a
bounded time from several worker processes (C{chatd.bench.worker}) and
measures what arrives (C{chatd.bench.stats}). Run it as C{chatd-bench}
(C{python -m chatd.bench.main}); C{--help} lists the options and scenarios.
Standard library only: it does not import Twisted or the rest of chatd, so
it loads any server of the family and stays light.

Load (C{--window} and C{--rate}): the window is the number of messages in
flight in total, split as evenly as possible among the worker processes; each
worker keeps its share in flight (a window smaller than the number of workers
leaves some workers only receiving). A message leaves the window when every
copy has arrived or when it expires. C{--rate} is open loop: that many
messages per second in total, whatever comes back.

The report (C{--json} prints it as one JSON object; the table shows the same):

 - C{scenario}, C{host}, C{tcp_port}, C{udp_port}, C{rooms}, C{members}
   (per room), C{members_total}, C{mode} (C{"window"} or C{"rate"}),
   C{window} and C{rate} (the one not used is null), C{size} (message bytes),
   C{workers}, C{duration_s} (measured), C{warmup_s}, C{expire_s};
 - C{setup_s}: seconds the creates and joins took; C{joins_per_s}: members
   registered (creates and joins) per second of setup;
 - C{sent}, C{sent_per_s}: messages sent with a send time in the measured
   window;
 - C{expected}: copies those messages should produce (M - 1 each);
   C{delivered}: how many arrived within the expiry; C{lost} = expected -
   delivered; C{loss_pct}: lost in % of expected;
 - C{delivered_per_s}: copies (of any message) received during the measured
   window, per second: the throughput figure;
 - C{latency_us}: C{p50}, C{p90}, C{p99}, C{p999}, C{max}, C{mean}: send to
   receive, µs, over the delivered copies (null without any);
 - C{late} (arrived after the expiry), C{duplicates}, C{reordered},
   C{misdelivered} (from the receiver itself or another room), C{wrong_len},
   C{unparsed} (datagrams that are not benchmark messages, such as notices),
   C{send_errors}: counts over the whole run;
 - C{server_pid}; C{server_cpu_pct}: the server process's CPU over the
   measured window, in % of one core, from /proc/PID/stat (null without
   C{--server-pid});
 - C{generator_cpu_pct}: the worker processes' CPU summed, in % of one core;
   C{generator_cpu_pct_per_worker}; C{machine_cpu_busy_pct}: all CPUs, from
   /proc/stat (null where unavailable);
 - C{generator_saturated}: true when the generator itself may have limited the
   run (a worker at 90 % of a core or more, the workers together at 90 % of
   the cores they could use, in open loop less than 95 % of the asked rate
   offered, or the machine's CPUs 80 % busy or more while the server used
   less than 90 % of a core: the generator shared the machine and took the
   CPU the server lacked);
 - C{warnings}: the warnings, as text.
"""
