import json, glob, os, re, statistics as st
D='/work/wt/pinbench/bench/results/2026-12-02-pinned'
rows={}
runs=sorted(glob.glob(D+'/bench-r*-*/report.json'))
print("| run | load before → after | target | req/s | p99 µs | HA cost | cap. cost | CPU µs/req n1 / n2 | CPU busy n1 / n2 | machine CPUs busy | client µs/req |")
print("| --- | --- | --- | ---: | ---: | ---: | ---: | --- | --- | --- | ---: |")
agg={}
for r in runs:
    run=os.path.basename(os.path.dirname(r)).replace('bench-','')
    j=json.load(open(r))
    m=j['machine']
    for t in j['targets']:
        if t.get('skipped'): print("|",run,"| | ",t['name'],"| skipped |"); continue
        c=t['cluster']; ra=t['ratios']
        ha=ra.get('ha_on_over_off'); cap=ra.get('master_cpu_on_over_off')
        name=t['name'].replace('cluster-','').replace('-unix','')
        print(f"| {run} | {m['load_before']:.1f} → {m['load_after']:.1f} | {name} | {t['requests_per_s']:,.0f} | {t['p99_us']:,.0f} | "
              f"{'' if ha is None else f'{(1-ha)*100:.1f} %'} | {'' if cap is None else f'{(1-1/cap)*100:.1f} %'} | "
              f"{' / '.join(f'{x:.0f}' for x in c['node_cpu_us_per_req'])} | {' / '.join(f'{x:.2f}' for x in c['node_cpu_busy'])} | {' / '.join(f'{x:.2f}' for x in c.get('machine_cpu_busy',[])) or 'not recorded'} | {t['client_cpu_us_per_req']:.0f} |")
        mode=run.split('-')[1]
        k=(mode,name)
        agg.setdefault(k,{'rps':[],'ha':[],'cap':[],'n1':[],'n2':[],'b1':[],'b2':[]})
        a=agg[k]; a['rps'].append(t['requests_per_s']); a['n1'].append(c['node_cpu_us_per_req'][0]); a['n2'].append(c['node_cpu_us_per_req'][1])
        a['b1'].append(c['node_cpu_busy'][0]); a['b2'].append(c['node_cpu_busy'][1])
        if ha is not None: a['ha'].append((1-ha)*100)
        if cap is not None: a['cap'].append((1-1/cap)*100)
print()
print("| layout | target | req/s (mean) | HA cost per run | HA cost mean | cap. cost per run | cap. cost mean | CPU µs/req n1 / n2 (mean) | busy n1 / n2 (mean) |")
print("| --- | --- | ---: | --- | ---: | --- | ---: | --- | --- |")
for k in sorted(agg):
    a=agg[k]
    f=lambda v: ', '.join(f'{x:.0f}' for x in v)
    print(f"| {k[0]} | {k[1]} | {st.mean(a['rps']):,.0f} | {f(a['ha'])} | {'' if not a['ha'] else f'{st.mean(a[chr(104)+chr(97)]):.0f} %'} | {f(a['cap'])} | {'' if not a['cap'] else f'{st.mean(a[chr(99)+chr(97)+chr(112)]):.0f} %'} | {st.mean(a['n1']):.0f} / {st.mean(a['n2']):.0f} | {st.mean(a['b1']):.2f} / {st.mean(a['b2']):.2f} |")
