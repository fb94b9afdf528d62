"""report.html's style sheet and its script (the token view's colours, sorting and hover text): static text the
page embeds, so that the report is one self-contained file."""

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1100px;padding:16px;
color:#222}
h1{font-size:22px;margin:0 0 6px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:28px}
h3{font-size:15px}section{break-inside:avoid-page}.badge span{font-weight:600;padding:3px 8px;border-radius:4px}
.pass{background:#d9f2e3;color:#11663a}.fail{background:#fbe0de;color:#9b1c12}.identity,.note{color:#555;font-size:13px}
.key{font-weight:600}.row{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}.pane{display:flex;gap:8px}
.pane[hidden]{display:none}.pane{flex-wrap:wrap}figure{margin:0}.fig{max-width:100%}.fig.small{max-width:480px}
.heatmap{width:min(430px,92vw)}
.findings{flex:1;min-width:300px;margin:0;padding-left:18px}.findings li{margin-bottom:5px}
table{border-collapse:collapse;font-size:12px;margin:6px 0}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
td:first-child,th:first-child{text-align:left}.ctx{text-align:left;font-family:ui-monospace,monospace;white-space:pre}
.hover{position:fixed;pointer-events:none;background:#fff;border:1px solid #888;padding:4px 6px;font-size:12px;
display:none;box-shadow:0 1px 4px #0003;z-index:9}.controls{margin:6px 0}.sw{display:inline-block;width:10px;
height:10px}.sw.acc{background:#1b9e77}.sw.rej{background:#d95f02}.acc{color:#11663a;font-weight:600}
.rej{color:#9b3d00;font-weight:600}.toks{font-family:ui-monospace,monospace;white-space:pre-wrap;line-height:2;
border:1px solid #eee;padding:6px}.t{border-bottom:4px solid transparent;-webkit-print-color-adjust:exact;
print-color-adjust:exact}.skip{color:#9b1c12}.legend{font-size:12px;display:flex;gap:6px;align-items:center}
.grad{display:inline-block;width:160px;height:10px;background:linear-gradient(90deg,#053061,#f7f7f7,#67001f)}
mark{background:#ffe08a}
@media print{.controls,.hover{display:none}.pane[hidden]{display:flex}body{max-width:none}}
"""

SCRIPT = """
(function(){
var data=JSON.parse(document.getElementById('report-data').textContent);
function f64(s){var b=atob(s),u=new Uint8Array(b.length);for(var i=0;i<b.length;i++)u[i]=b.charCodeAt(i);
return new Float64Array(u.buffer);}
var hm=data.heatmap,n=data.n,mats={};
if(hm.aggregated){['raw_cos','raw_dot','hinv_cos','hinv_dot'].forEach(function(k){mats[k]=f64(hm[k]);});}
else{mats.raw=f64(hm.raw);mats.hinv=f64(hm.hinv);}
function g(x){return Math.abs(x)>=1e5||(x!==0&&Math.abs(x)<1e-3)?x.toExponential(3):x.toPrecision(4);}
function cell(m,i,j){var M=mats[m];return {dot:M[i*n+j],cos:M[i*n+j]/Math.sqrt(M[i*n+i]*M[j*n+j])};}
function who(i){return 'response '+(data.response_id?data.response_id[i]:i)+' (prompt '+data.prompt_index[i]+', '+
(data.accepted[i]?'accepted':'rejected')+')';}
var tip=document.getElementById('hover');
document.querySelectorAll('img.heatmap').forEach(function(img){
 var ext=img.dataset.extent.split(',').map(Number);
 img.addEventListener('mousemove',function(ev){
  var r=img.getBoundingClientRect(),x=(ev.clientX-r.left)/r.width,y=(ev.clientY-r.top)/r.height;
  var size=hm.aggregated?hm.groups.length:n;
  var c=Math.floor((x-ext[0])/ext[2]*size),w=Math.floor((y-ext[1])/ext[3]*size);
  if(c<0||w<0||c>=size||w>=size){tip.style.display='none';return;}
  var text;
  if(hm.aggregated){var a=hm.groups[w],b=hm.groups[c],k=w*size+c;
   text=a.label+(a.accepted?' accepted':' rejected')+' ('+a.size+') × '+b.label+
   (b.accepted?' accepted':' rejected')+' ('+b.size+')<br>RAW mean cos '+g(mats.raw_cos[k])+', dot '+
   g(mats.raw_dot[k])+'<br>HINV mean cos '+g(mats.hinv_cos[k])+', dot '+g(mats.hinv_dot[k]);}
  else{var i=hm.order[w],j=hm.order[c],ra=cell('raw',i,j),hi=cell('hinv',i,j);
   text=who(i)+' ×<br>'+who(j)+'<br>RAW cos '+g(ra.cos)+', dot '+g(ra.dot)+'<br>HINV cos '+g(hi.cos)+', dot '+
   g(hi.dot);}
  tip.innerHTML=text;tip.style.left=(ev.clientX+14)+'px';tip.style.top=(ev.clientY+14)+'px';
  tip.style.display='block';});
 img.addEventListener('mouseleave',function(){tip.style.display='none';});
});
document.querySelectorAll('input[name=hm]').forEach(function(r){r.addEventListener('change',function(){
 document.querySelectorAll('#heatmaps .pane').forEach(function(p){p.hidden=!p.classList.contains(r.value);});});});
var T=data.tokens,ps=document.getElementById('prompt-select'),rs=document.getElementById('response-select');
if(T&&ps&&rs){
 var sc=f64(T.scores),en=f64(T.entropy),rw=f64(T.reward),ss=f64(T.score_sum);
 var view=document.getElementById('response-view');
 function ramp(stops,x){x=Math.max(0,Math.min(1,x))*(stops.length-1);var i=Math.min(stops.length-2,Math.floor(x)),
  f=x-i,a=stops[i],b=stops[i+1];return [0,1,2].map(function(k){return Math.round(a[k]+(b[k]-a[k])*f);});}
 function css(c){return 'rgb('+c.join(',')+')';}
 var espan=T.entropy_max-T.entropy_min;
 function show(r){
  r=Number(r);var pid=T.prompt_id[r],acc=T.accepted[r];
  var box=document.createElement('div'),info=document.createElement('p');
  info.className='rinfo';info.innerHTML='response <b></b> of prompt <b></b> · reward '+g(rw[r])+' · <span class="'+
   (acc?'acc">accepted':'rej">rejected')+'</span> · score sum '+(isNaN(ss[r])?'—':g(ss[r]));
  info.querySelectorAll('b')[0].textContent=T.response_id[r];info.querySelectorAll('b')[1].textContent=pid;
  box.className='resp';box.dataset.r=r;box.appendChild(info);
  if(T.skipped[pid]!==undefined){var s=document.createElement('p');s.className='skip';
   s.textContent='Not scored: '+T.skipped[pid]+'.';box.appendChild(s);}
  var toks=document.createElement('div');toks.className='toks';
  for(var k=T.offsets[r];k<T.offsets[r+1];k++){var t=document.createElement('span');t.className='t';
   t.textContent=T.text[k];t.dataset.s=sc[k];t.dataset.e=en[k];
   if(isNaN(sc[k])){t.style.background='#eeeeee';}
   else{var c=ramp(T.score_colors,0.5+0.5*sc[k]/T.scale);t.style.background=css(c);
    if(0.299*c[0]+0.587*c[1]+0.114*c[2]<140)t.style.color='#ffffff';}  /* light text on dark chips */
   t.style.borderBottomColor=isNaN(en[k])?'#ffffff':
    css(ramp(T.entropy_colors,espan>1e-3*Math.max(Math.abs(T.entropy_max),1e-12)?
     (en[k]-T.entropy_min)/espan:0.5));
   t.title='score '+(isNaN(sc[k])?'—':g(sc[k]))+' · entropy '+g(en[k]);toks.appendChild(t);}
  box.appendChild(toks);view.replaceChildren(box);}
 ps.addEventListener('change',function(){rs.replaceChildren();
  T.prompt_id.forEach(function(p,r){if(p!==ps.value)return;var o=document.createElement('option');o.value=r;
   o.textContent=T.response_id[r]+(T.accepted[r]?' ✓':' ✗');rs.appendChild(o);});
  if(rs.options.length)show(rs.value);});
 rs.addEventListener('change',function(){show(rs.value);});
 ps.dispatchEvent(new Event('change'));
}
})();
"""
