"""report.html's inline style sheet and script (``common.report.report_page`` writes them into the page).

The script reads the page's JSON block (``report-data``) and:

* composes each field's picture on its ``canvas.pic`` from the grey channel tiles of its JPEG
  (``report.channel_tiles``): each stain shown is drawn, multiplied by its false colour (or white
  when one stain is shown in grey) and added (``lighter``), so no pixel is ever read back (pictures
  from ``file://`` taint a canvas). Canvases are painted when near the view and emptied when far;
* filters the cells (top class, or probability > a threshold) and writes "Download these cells"
  (the shown cells as cells.csv's rows) as a Blob, with no server;
* shows a cell's top three classes on hover or click, its top class's name beside the pointer, and a
  field's larger view (a ``<dialog>``) with the cell ids drawn;
* with ``report/index.js`` (``window.REPORT_INDEX``, ``common.report.pages``): says where the page lies
  among all, goes to a field typed in the jump box (its page, its figure ``#f-{index}``), and lists
  the fields of all pages with a cell of the class chosen in the filter (links to their pages);
* sets ``window.reportReady`` (ms from the navigation's start) when it is done.

Text from the data is written with ``textContent`` only, never as HTML.
"""

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 1em 4em;background:#fafafa;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
.charts{display:flex;flex-wrap:wrap;gap:2em}.charts svg text{font-size:11px}
#controls{position:sticky;top:0;z-index:2;background:#fafafa;padding:.5em 0;border-bottom:1px solid #ccc}
#controls label{margin-right:1em}#stains{margin-top:.3em}
#info{position:fixed;right:1em;bottom:1em;z-index:3;background:#fff;border:1px solid #999;
 padding:.5em 1em;min-width:16em;box-shadow:0 2px 6px #0003}
#info ol{margin:.2em 0;padding-left:1.4em}
#tip{position:fixed;z-index:4;pointer-events:none;background:#fff;border:1px solid #555;padding:0 .3em;
 font-size:12px}
.sw{display:inline-block;width:.8em;height:.8em;margin-right:.3em;border:1px solid #555}
.fields{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:1em;scroll-margin-top:6em}
.field{margin:0;content-visibility:auto;contain-intrinsic-size:auto 380px}
.field figcaption button{font-size:11px;padding:0 .4em}
.fv,#zoom-view,.cv{position:relative;line-height:0;background:#000}
.fv canvas,.fv svg,#zoom-view canvas,#zoom-view svg,.cv canvas,.cv svg{position:absolute;left:0;top:0;
 width:100%;height:100%}
.fv{cursor:zoom-in}
path.cell,path.zcell{fill:#0000;stroke-width:1.5;vector-effect:non-scaling-stroke;pointer-events:all;cursor:pointer}
path.off,text.off{display:none}path.sel{stroke-width:3;fill:#fff3}
g.bar rect{fill:#fff;stroke:#000;stroke-width:.5}
g.bar text,text.cid{fill:#fff;stroke:#000;stroke-width:2px;paint-order:stroke;text-anchor:middle;
 font-family:system-ui,sans-serif;vector-effect:non-scaling-stroke}
text.cid{dominant-baseline:central;pointer-events:none}
#zoom{padding:.5em;border:0;max-width:98vw;max-height:98vh}#zoom::backdrop{background:#000a}
.zoom-head{margin-bottom:.3em}
.crop path{fill:none;stroke-width:1.5;vector-effect:non-scaling-stroke}
.gallery figure{display:inline-block;margin:0 .5em .5em 0;width:120px;font-size:11px;vertical-align:top}
.gallery .cv{width:120px;height:120px}
table.ap{border-collapse:collapse}table.ap td,table.ap th{padding:.1em .6em;border-bottom:1px solid #ddd}
table.ap td.n{text-align:right}
#nav{margin-bottom:.3em}#nav a{margin-right:.6em}#jump-msg{color:#b00}
#matches{margin:.5em 0;max-height:12em;overflow:auto}#matches a{margin-right:.3em}
.field{scroll-margin-top:10em}.field:target{outline:3px solid #f90}
"""

JS = r"""
(function(){
'use strict';
const D=JSON.parse(document.getElementById('report-data').textContent),K=D.k,N=D.top.length;
const $=id=>document.getElementById(id);
const sel=$('cls'),thr=$('thr'),byTop=$('mode-top'),grey=$('grey');
const chk=D.tints.map((t,c)=>$('ch-'+c)),on=new Uint8Array(N);
function make(tag,text,attrs){const e=document.createElement(tag);
 if(text!==undefined)e.textContent=text;for(const a in attrs||{})e.setAttribute(a,attrs[a]);return e;}
function apply(){
 const c=sel.value===''?-1:+sel.value,t=+thr.value,top=byTop.checked;let n=0;
 $('thr-v').textContent=t.toFixed(2);
 for(let k=0;k<N;k++){on[k]=c<0||(top?D.top[k]===c:D.p[k*K+c]>t)?1:0;n+=on[k];}
 for(const el of document.querySelectorAll('[data-k]'))el.classList.toggle('off',!on[+el.dataset.k]);
 $('shown').textContent=n;
}
// ---- pictures: the stains shown, composed on each canvas
const imgs=new Map(),S=document.createElement('canvas'),SC=S.getContext('2d');
function tints(){const shown=chk.map((b,c)=>b.checked?c:-1).filter(c=>c>=0),g=grey.checked&&shown.length===1;
 return shown.map(c=>[c,g?'rgb(255,255,255)':'rgb('+D.tints[c].join(',')+')']);}
function image(f){let im=imgs.get(f);
 if(!im){im=new Image();im.waiting=new Set();imgs.set(f,im);
  im.onload=()=>{for(const cv of im.waiting)paint(cv);im.waiting.clear();};im.src=D.fields[f].src;}
 return im;}
function paint(cv){
 const F=D.fields[+cv.dataset.f],im=image(+cv.dataset.f),W=+cv.dataset.w,H=+cv.dataset.h;
 if(!im.complete||!im.naturalWidth){im.waiting.add(cv);return;}
 if(cv.width!==W||cv.height!==H){cv.width=W;cv.height=H;}
 const v=cv.dataset.vb?cv.dataset.vb.split(' ').map(Number):[0,0,F.tw,F.th],sx=W/v[2],sy=H/v[3];
 const ctx=cv.getContext('2d');ctx.globalCompositeOperation='source-over';ctx.fillStyle='#000';
 ctx.fillRect(0,0,W,H);
 const x0=Math.max(v[0],0),y0=Math.max(v[1],0),x1=Math.min(v[0]+v[2],F.tw),y1=Math.min(v[1]+v[3],F.th);
 if(x1<=x0||y1<=y0)return;
 if(S.width!==W||S.height!==H){S.width=W;S.height=H;}
 for(const [c,tint] of tints()){const [tx,ty,tw,th]=F.tiles[c],kx=tw/F.tw,ky=th/F.th;
  SC.globalCompositeOperation='source-over';SC.fillStyle='#000';SC.fillRect(0,0,W,H);
  SC.drawImage(im,tx+x0*kx,ty+y0*ky,(x1-x0)*kx,(y1-y0)*ky,(x0-v[0])*sx,(y0-v[1])*sy,(x1-x0)*sx,(y1-y0)*sy);
  SC.globalCompositeOperation='multiply';SC.fillStyle=tint;SC.fillRect(0,0,W,H);
  ctx.globalCompositeOperation='lighter';ctx.drawImage(S,0,0);}
 ctx.globalCompositeOperation='source-over';cv.dataset.painted='1';
}
const near=new IntersectionObserver(es=>{for(const e of es){const cv=e.target;
 if(e.isIntersecting){cv.dataset.near='1';paint(cv);}
 else{cv.dataset.near=cv.dataset.painted='';cv.width=cv.height=0;}}},
 {rootMargin:'1000px'});
for(const cv of document.querySelectorAll('canvas.pic'))near.observe(cv);
function repaint(){for(const cv of document.querySelectorAll('canvas.pic'))if(cv.dataset.near)paint(cv);}
for(const b of chk)b.addEventListener('change',repaint);
grey.addEventListener('change',repaint);
$('protein-alone').addEventListener('click',e=>{const g=+e.currentTarget.dataset.channel;
 chk.forEach((b,c)=>{b.checked=c===g;});grey.checked=true;repaint();});
$('all-stains').addEventListener('click',()=>{for(const b of chk)b.checked=true;repaint();});
// ---- a cell: its top three (info box), its top class by the pointer
let last=null;
function info(p){
 const k=+p.dataset.k,box=$('info'),ps=[];for(let j=0;j<K;j++)ps.push([D.p[k*K+j],j]);
 ps.sort((a,b)=>b[0]-a[0]);
 const head=make('div');head.append(make('b',D.fields[D.field[k]].id),' cell '+D.id[k]);
 const ol=make('ol',undefined,{id:'top3'});
 for(const [v,j] of ps.slice(0,3)){
  const li=make('li',undefined,{'data-class':D.names[j],'data-p':v.toFixed(4)});
  const sw=make('span',undefined,{'class':'sw'});sw.style.background=D.colours[j];
  li.append(sw,D.names[j]+' '+v.toFixed(4));ol.append(li);}
 box.replaceChildren(head,ol);
 if(D.truth){const t=D.truth[k];box.append(make('div','truth: '+(t===null?'unknown':t.length?
  t.map(j=>D.names[j]).join(', '):'no true cell at IoU \u2265 '+D.iou),{id:'truth'}));}
 if(last)last.classList.remove('sel');p.classList.add('sel');last=p;
}
const tip=$('tip');
document.addEventListener('mouseover',e=>{const p=e.target.closest&&e.target.closest('path[data-k]');
 if(!p){tip.hidden=true;return;}info(p);tip.textContent=D.names[D.top[+p.dataset.k]];tip.hidden=false;
 tip.style.left=(e.clientX+14)+'px';tip.style.top=(e.clientY+14)+'px';});
document.addEventListener('mousemove',e=>{if(!tip.hidden){tip.style.left=(e.clientX+14)+'px';
 tip.style.top=(e.clientY+14)+'px';}});
// ---- a field's larger view, the cell ids drawn
const dlg=$('zoom'),view=$('zoom-view');
function zoom(f){
 const F=D.fields[f],svg=document.querySelector('figure.field[data-f="'+f+'"] svg').cloneNode(true);
 $('zoom-title').textContent=F.id+' \u00b7 '+F.w+'\u00d7'+F.h+' \u00b7 '+F.n+' cells';
 for(const p of svg.querySelectorAll('path.cell')){p.classList.replace('cell','zcell');
  p.classList.remove('sel');}
 const NS=svg.namespaceURI,ids=document.createElementNS(NS,'g'),fs=(Math.max(F.tw,F.th)/40).toFixed(1);
 for(let k=0;k<N;k++)if(D.field[k]===f){const t=document.createElementNS(NS,'text');
  t.setAttribute('class','cid');t.setAttribute('x',(D.x[k]*F.tw/F.w).toFixed(1));
  t.setAttribute('y',(D.y[k]*F.th/F.h).toFixed(1));t.setAttribute('font-size',fs);t.dataset.k=k;
  t.textContent=D.id[k];ids.append(t);}
 svg.append(ids);
 const cv=make('canvas',undefined,{'class':'pic','data-f':f,'data-w':F.tw,'data-h':F.th,'data-near':'1'});
 view.style.width='min(94vw,'+(86*F.tw/F.th).toFixed(2)+'vh)';view.style.aspectRatio=F.tw+'/'+F.th;
 view.replaceChildren(cv,svg);dlg.showModal();apply();paint(cv);
}
dlg.addEventListener('close',()=>view.replaceChildren());
$('zoom-close').addEventListener('click',()=>dlg.close());
document.addEventListener('click',e=>{const p=e.target.closest('path[data-k]');if(p){info(p);return;}
 if(e.target===dlg){dlg.close();return;}
 const b=e.target.closest('button.zoom,.field .fv');if(b)zoom(+(b.dataset.f||b.parentNode.dataset.f));});
// ---- "Download these cells": the cells shown, as cells.csv's rows
function csv(v){v=String(v);return /[",\r\n]/.test(v)?'"'+v.replace(/"/g,'""')+'"':v;}
$('download').addEventListener('click',()=>{
 const lines=[D.columns.map(csv).join(',')];
 for(let k=0;k<N;k++)if(on[k]){const j=D.top[k],row=[D.fields[D.field[k]].id,D.id[k],D.x[k],D.y[k],
  D.area[k],D.border[k],D.names[j],D.p[k*K+j]];for(let c=0;c<K;c++)row.push(D.p[k*K+c]);
  lines.push(row.map(csv).join(','));}
 const url=URL.createObjectURL(new Blob([lines.join('\n')+'\n'],{type:'text/csv'}));
 const a=make('a',undefined,{href:url,download:'cells_shown.csv'});
 document.body.append(a);a.click();a.remove();
 setTimeout(()=>URL.revokeObjectURL(url),10000);});
for(const x of [sel,thr,byTop,$('mode-p')])for(const ev of ['input','change'])x.addEventListener(ev,apply);
// ---- pages (report/index.js: every field's ID, per class the fields with a cell of it at p >= threshold)
const X=window.REPORT_INDEX,LIST=200;
function pageUrl(q){return q===D.page?'':q===0?D.home:D.base+'page-'+String(q+1).padStart(4,'0')+'.html';}
function fieldUrl(i){return pageUrl(Math.floor(i/X.page_size))+'#f-'+i;}
if(X){const n=X.ids.length,np=Math.max(1,Math.ceil(n/X.page_size));
 $('page-of').textContent='page '+(D.page+1)+' of '+np+' \u00b7 fields '+(D.n?(D.first+1)+'\u2013'+
  (D.first+D.n):'none')+' of '+n;}
let byId=null;
function go(url){if(url[0]!=='#'){location.href=url;return;}
 location.hash=url;const el=document.getElementById(url.slice(1));if(el)el.scrollIntoView();}
function jump(){const v=$('jump').value.trim(),msg=$('jump-msg');msg.textContent='';if(!v||!X)return;
 if(!byId){byId=new Map();X.ids.forEach((s,i)=>byId.set(s,i));}
 const i=byId.get(v);if(i===undefined){msg.textContent='no field '+v;return;}go(fieldUrl(i));}
$('jump').addEventListener('keydown',e=>{if(e.key==='Enter')jump();});
$('jump-go').addEventListener('click',jump);
function members(c){const b=atob(X.classes[c]),out=[];
 for(let i=0;i<X.ids.length;i++)if(b.charCodeAt(i>>3)>>(i&7)&1)out.push(i);return out;}
function matches(){const box=$('matches'),c=sel.value===''?-1:+sel.value;box.replaceChildren();
 if(c<0||!X)return;const list=members(c);let at=0;
 box.append(make('span',list.length+' of '+X.ids.length+' fields have a cell of '+D.names[c]+' at p \u2265 '+
  X.threshold+' (all pages):',{id:'n-matches'}),' ');
 const more=make('button','more',{type:'button',id:'matches-more'});box.append(more);
 function show(){for(const i of list.slice(at,at+LIST)){const a=make('a',X.ids[i],{href:fieldUrl(i),
  'class':'match','data-i':i,title:'page '+(Math.floor(i/X.page_size)+1)});box.insertBefore(a,more);
  box.insertBefore(document.createTextNode(' '),more);}at+=LIST;more.hidden=at>=list.length;}
 more.addEventListener('click',show);show();}
for(const ev of ['input','change'])sel.addEventListener(ev,matches);
apply();matches();
window.reportReady=performance.now();  // ms from the navigation's start to this page's script done
})();
"""
