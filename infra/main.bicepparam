// Defaults for a first deployment; override any of them with -p name=value.
using 'main.bicep'

param namePrefix = 'sdfunc'
param planSku = 'EP2'
param alwaysReadyInstances = 1
param preWarmedInstances = 1
param maximumBurst = 10
param modelContainerName = 'models'
param modelBlobPrefix = 'sd15-fast'
param imageSize = 512
param imageUrlLifetime = '00:15:00'
param uploaderPrincipalId = ''
param retentionDays = 7
param logRetentionDays = 30
