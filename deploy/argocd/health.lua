-- Argo CD health of a Weft object (group weft.dev) from its kstatus conditions: Ready,
-- Reconciling and Stalled. Uses no `string` library, so it runs unchanged from argocd-cm,
-- where Argo CD opens none unless useOpenLibs is set.
local hs = { status = "Progressing", message = "Waiting for the Weft operator to report status" }
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local conditions = {}
for _, c in ipairs(obj.status.conditions) do
  conditions[c.type] = c
end
local ready = conditions["Ready"]
-- A status written for an older spec says nothing about the current one, not even a stall
-- that the new spec may have fixed.
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if ready ~= nil and ready.observedGeneration ~= nil and (observed == nil or ready.observedGeneration < observed) then
  observed = ready.observedGeneration
end
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "Waiting for the Weft operator to observe generation " .. generation
  return hs
end
local stalled = conditions["Stalled"]
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = stalled.message
  return hs
end
-- A MeshGateway whose mesh or revision is not there yet waits: GitOps may apply it later.
if ready ~= nil and ready.status ~= "True" and ready.reason == "WaitingForRevision" then
  hs.message = ready.message
  return hs
end
local reconciling = conditions["Reconciling"]
if reconciling ~= nil and reconciling.status == "True" then
  hs.message = reconciling.message
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message
  return hs
end
-- Not Ready, yet neither reconciling nor stalled: the operator reports every failure that
-- needs a fix as Stalled, so this is work still under way.
if ready ~= nil and ready.message ~= nil and ready.message ~= "" then
  hs.message = ready.message
end
return hs
