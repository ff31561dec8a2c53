// SdFunctions on Azure: an Elastic Premium (Linux, CPU) Function App running the .NET 10 isolated worker, its data
// storage reached with the app's managed identity only (least privilege: each container and queue its own grant; the
// Functions host's leases and keys in an account of their own), a retention policy, and monitoring. Deploy into an existing resource group:
//   az deployment group create -g <group> -f infra/main.bicep -p infra/main.bicepparam
targetScope = 'resourceGroup'

@description('Prefix of every resource name: 3–11 lowercase letters or digits. A suffix unique to the resource group is added.')
@minLength(3)
@maxLength(11)
param namePrefix string = 'sdfunc'

@description('Azure region of every resource.')
param location string = resourceGroup().location

@description('Elastic Premium size: EP1 (1 core, 3.5 GB), EP2 (2 cores, 7 GB), EP3 (4 cores, 14 GB). The INT8 + ToMe model needs EP2.')
@allowed([
  'EP1'
  'EP2'
  'EP3'
])
param planSku string = 'EP2'

@description('Instances that are always running (loaded model, no cold start). Billed around the clock.')
@minValue(1)
@maxValue(20)
param alwaysReadyInstances int = 1

@description('Extra instances kept warm ahead of scale-out.')
@minValue(0)
@maxValue(10)
param preWarmedInstances int = 1

@description('The most instances the plan may burst to.')
@minValue(1)
@maxValue(100)
param maximumBurst int = 10

@description('Blob container holding the model bundle (the output of `sdf optimize`), downloaded once per instance.')
param modelContainerName string = 'models'

@description('Folder of the bundle inside the model container (blob name prefix).')
param modelBlobPrefix string = 'sd15-fast'

@description('The one image size the pipeline is compiled for (static shapes).')
@allowed([
  256
  512
  768
])
param imageSize int = 512

@description('How long an image link (user-delegation SAS) stays valid, as a .NET TimeSpan.')
param imageUrlLifetime string = '00:15:00'

@description('Object ID of the user or group that uploads the model bundle (gets Storage Blob Data Contributor on the model container). Empty: none.')
param uploaderPrincipalId string = ''

@description('Days job records, idempotency keys and images are kept after their last change; a Storage lifecycle policy deletes them.')
@minValue(1)
@maxValue(3650)
param retentionDays int = 7

@description('Log Analytics retention in days.')
@minValue(30)
@maxValue(730)
param logRetentionDays int = 30

@secure()
@description('Standard Webhooks signing secret (whsec_ + base64 of 24–64 random bytes). Empty: requests with a webhook are refused.')
param webhookSigningSecret string = ''

var suffix = uniqueString(resourceGroup().id, namePrefix)
var dataAccountName = take('${namePrefix}data${suffix}', 24)
var hostAccountName = take('${namePrefix}host${suffix}', 24)
var contentAccountName = take('${namePrefix}app${suffix}', 24)
var appName = '${namePrefix}-${suffix}'
var queueName = 'generations'
// The webhook deliveries' queue (WebhookQueue.Name): events wait there, never blocking a generation.
var webhookQueueName = 'webhooks'
// Must equal host.json's extensions.queues.maxDequeueCount.
var maxDequeueCount = 3

// Built-in role definitions (https://learn.microsoft.com/azure/role-based-access-control/built-in-roles).
var roles = {
  // The Functions host keeps its leases and keys in blobs of AzureWebJobsStorage; it needs Owner there.
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  storageBlobDataReader: '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
  // generateUserDelegationKey only (account scope), for the read-only image links.
  storageBlobDelegator: 'db58b8e5-c6ad-4a2a-8342-4190687cbf4a'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

// Jobs, images, models and the queues: identity only, no account keys.
resource dataAccount 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: dataAccountName
  location: location
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    accessTier: 'Hot'
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: dataAccount
  name: 'default'
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [
  for name in [
    'jobs'
    'images'
    modelContainerName
  ]: {
    parent: blobService
    name: name
    properties: {
      publicAccess: 'None'
    }
  }
]

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: dataAccount
  name: 'default'
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [
  for name in [
    queueName
    '${queueName}-poison'
    webhookQueueName
    '${webhookQueueName}-poison'
  ]: {
    parent: queueService
    name: name
  }
]

// Job records, idempotency claims, pending marks and images expire: nothing is kept forever.
resource retention 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: dataAccount
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'expire-jobs-and-images'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
              prefixMatch: [
                'jobs/'
                'images/'
              ]
            }
            actions: {
              baseBlob: {
                delete: {
                  daysAfterModificationGreaterThan: retentionDays
                }
              }
            }
          }
        }
      ]
    }
  }
  dependsOn: [
    containers
  ]
}

// The Functions host's own storage (leases, function keys, timer schedules): identity only, and nothing of the app's.
resource hostAccount 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: hostAccountName
  location: location
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    accessTier: 'Hot'
  }
}

// The app's own files: Elastic Premium keeps them on an Azure Files share, which only takes account keys.
// A separate account, so the data account can refuse keys altogether.
resource contentAccount 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: contentAccountName
  location: location
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: true
  }
}

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: '${namePrefix}-logs-${suffix}'
  location: location
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: logRetentionDays
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: '${namePrefix}-insights-${suffix}'
  location: location
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    // Telemetry only with the app's identity (Monitoring Metrics Publisher), not with the key in the connection string.
    DisableLocalAuth: true
  }
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: '${namePrefix}-plan-${suffix}'
  location: location
  kind: 'elastic'
  sku: {
    name: planSku
    tier: 'ElasticPremium'
  }
  properties: {
    reserved: true // Linux
    maximumElasticWorkerCount: maximumBurst
  }
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  name: appName
  location: location
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientAffinityEnabled: false
    siteConfig: {
      linuxFxVersion: 'DOTNET-ISOLATED|10.0'
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      use32BitWorkerProcess: false
      minimumElasticInstanceCount: alwaysReadyInstances
      preWarmedInstanceCount: preWarmedInstances
      functionAppScaleLimit: maximumBurst
      appSettings: [
        // The Functions host
        {
          name: 'FUNCTIONS_EXTENSION_VERSION'
          value: '~4'
        }
        {
          name: 'FUNCTIONS_WORKER_RUNTIME'
          value: 'dotnet-isolated'
        }
        {
          name: 'WEBSITE_CONTENTAZUREFILECONNECTIONSTRING'
          value: 'DefaultEndpointsProtocol=https;AccountName=${contentAccount.name};EndpointSuffix=${environment().suffixes.storage};AccountKey=${contentAccount.listKeys().keys[0].value}'
        }
        {
          name: 'WEBSITE_CONTENTSHARE'
          value: toLower(appName)
        }
        {
          name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
          value: appInsights.properties.ConnectionString
        }
        {
          name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
          value: 'Authorization=AAD'
        }
        // Storage, identity-based (the app's system-assigned identity): the host's own account, and the data account
        // that the queue trigger and the app use (JobsStorage)
        {
          name: 'AzureWebJobsStorage__accountName'
          value: hostAccount.name
        }
        {
          name: 'AzureWebJobsStorage__credential'
          value: 'managedidentity'
        }
        {
          name: 'JobsStorage__accountName'
          value: dataAccount.name
        }
        {
          name: 'JobsStorage__credential'
          value: 'managedidentity'
        }
        // The app (shared/SdFunctions.Jobs: ModelOptions, JobsOptions)
        {
          name: 'Model__BlobContainer'
          value: modelContainerName
        }
        {
          name: 'Model__BlobPrefix'
          value: modelBlobPrefix
        }
        {
          name: 'Model__CacheDirectory'
          value: '/tmp/sdfunctions'
        }
        {
          name: 'Jobs__QueueName'
          value: queueName
        }
        {
          name: 'Webhooks__QueueName'
          value: webhookQueueName
        }
        {
          name: 'Webhooks__SigningSecret'
          value: webhookSigningSecret
        }
        {
          name: 'Jobs__JobsContainer'
          value: containers[0].name
        }
        {
          name: 'Jobs__ImagesContainer'
          value: containers[1].name
        }
        {
          name: 'Jobs__ImageUrlLifetime'
          value: imageUrlLifetime
        }
        {
          name: 'Jobs__MaxDequeueCount'
          value: string(maxDequeueCount)
        }
        {
          name: 'Jobs__Width'
          value: string(imageSize)
        }
        {
          name: 'Jobs__Height'
          value: string(imageSize)
        }
      ]
    }
  }
}

// No FTP and no basic-auth deployment credentials: deployments authenticate with Entra ID.
resource ftpPolicy 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: app
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPolicy 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: app
  name: 'scm'
  properties: {
    allow: false
  }
}

// The host's identity needs Owner on its own account (leases, keys); nothing there belongs to the app's data.
resource hostBlobRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hostAccount.id, app.id, roles.storageBlobDataOwner)
  scope: hostAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: app.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

// On the data account, each grant as narrow as its use: read and write jobs and images, read the model (the app cannot
// rewrite it), delegate a key for the image links, and use the four queues (generations, webhooks, and their poison queues).
resource appJobsImagesRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for i in range(0, 2): {
    name: guid(containers[i].id, app.id, roles.storageBlobDataContributor)
    scope: containers[i]
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
      principalId: app.identity.principalId
      principalType: 'ServicePrincipal'
    }
  }
]

resource appModelRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(containers[2].id, app.id, roles.storageBlobDataReader)
  scope: containers[2]
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataReader)
    principalId: app.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

resource appDelegatorRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(dataAccount.id, app.id, roles.storageBlobDelegator)
  scope: dataAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDelegator)
    principalId: app.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

resource appQueueRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for i in range(0, 4): {
    name: guid(queues[i].id, app.id, roles.storageQueueDataContributor)
    scope: queues[i]
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
      principalId: app.identity.principalId
      principalType: 'ServicePrincipal'
    }
  }
]

resource appTelemetryRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, app.id, roles.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: app.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

// Whoever uploads the model bundle: write access to the model container only.
resource modelContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: modelContainerName
}

resource uploaderRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(uploaderPrincipalId)) {
  name: guid(dataAccount.id, modelContainerName, uploaderPrincipalId, roles.storageBlobDataContributor)
  scope: modelContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: uploaderPrincipalId
  }
  dependsOn: [
    containers
  ]
}

@description('Base URL of the API, e.g. POST {apiBaseUrl}/generations.')
output apiBaseUrl string = 'https://${app.properties.defaultHostName}/api'

@description('The Function App (for publishing and keys).')
output functionAppName string = app.name

@description('The data storage account (model uploads go to its model container).')
output storageAccountName string = dataAccount.name

@description('Where the model bundle goes.')
output modelLocation string = '${dataAccount.name}/${modelContainerName}/${modelBlobPrefix}'
